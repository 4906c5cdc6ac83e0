"""``python -m tcpchimney.nic --fd N``: the NIC process (nic/process.py). The host starts it; it is not a
command for people."""

import sys

from tcpchimney.nic.process import main

sys.exit(main())
