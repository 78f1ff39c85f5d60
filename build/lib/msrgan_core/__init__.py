"""msrgan: super-resolution for high-content-screening microscopy."""
__version__ = "0.1.0"
