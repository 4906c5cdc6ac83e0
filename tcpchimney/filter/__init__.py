"""A stateful packet filter for the host stack, in the spirit of nftables (sans-I/O).

``packet`` is what a rule looks at, ``conntrack`` tracks connections and gives each packet its state, the
rule modules match and decide. The host calls the filter at its input and output; the NIC enforces what the
host decided for the connections it runs (see docs/security.md).
"""
