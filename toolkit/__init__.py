"""crisis-tool: train, export and deploy the Differential-Attention multimodal crisis-tweet classifier.

Importing this package is cheap: torch and open_clip are imported only by the modules that need them.
"""

__version__ = "0.1.0"
