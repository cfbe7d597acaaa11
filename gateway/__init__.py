"""fax-gateway: an email-to-fax gateway for the 123-fax.net provider."""

__version__ = "0.1.0"
