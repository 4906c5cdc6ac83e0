"""tcpchimney: a user-space TCP/IP stack built on the TCP Chimney stateful-offload architecture."""

__version__ = "0.1.0"
