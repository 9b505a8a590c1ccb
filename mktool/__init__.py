"""mktool: the batch engine of a telecom operator's stock-customer precision-marketing system."""

__version__ = "0.1.0"
