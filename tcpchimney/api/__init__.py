"""What applications use: the asyncio runtime and streams, a blocking socket API, an in-memory device pair."""

from tcpchimney.api.memdev import MemoryDevice, MemoryDevicePair
from tcpchimney.api.runtime import Runtime, Server
from tcpchimney.api.socket import BackgroundRuntime, Socket
from tcpchimney.api.streams import SocketInfo, TcpTransport

__all__ = [
    "BackgroundRuntime",
    "MemoryDevice",
    "MemoryDevicePair",
    "Runtime",
    "Server",
    "Socket",
    "SocketInfo",
    "TcpTransport",
]
