"""lited: the Paddle Lite daemon. On-device inference for edge boards."""

__version__ = "0.1.0"
