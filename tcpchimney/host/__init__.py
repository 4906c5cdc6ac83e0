"""The host stack: one interface's ARP, IPv4, ICMP and TCP connection setup, sans-I/O.

- ``stack.HostStack``: the node (handle_frame / handle_timer / frames_to_send / next_deadline / next_event)
  and the application API (listen, connect, ping, counters).
- ``interface``: ``InterfaceConfig`` (MAC, address/prefix, gateway, MTU, device features).
- ``arp``: the neighbor cache (RFC 826 with Linux's reachability states).
- ``ipv4``: address rules, header templates, IP IDs, fragmentation; ``reassembly``: RFC 791 reassembly.
- ``icmp``: echo, errors, path MTU input.
- ``listener`` / ``sockets``: ``Listener`` (SYN and accept queues) and ``TcpSocket`` (one engine + addresses).
- ``tcp_demux``: resets for closed ports, TIME-WAIT reuse; ``syncookies``; ``ports`` (RFC 6056).
- ``events``, ``errors``, ``counters``: what the stack reports and raises.

Bytes are read and written only through ``tcpchimney.wire``.
"""
