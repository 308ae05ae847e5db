"""The channel: how a worker's records reach the parent and are handled there."""
