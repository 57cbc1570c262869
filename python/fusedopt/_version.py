"""The package's version: the library's MAJOR.MINOR.PATCH it was written for."""

__version__ = "0.4.0"
