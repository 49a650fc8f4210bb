"""Where a service's endpoints come from besides the config files: DNS names re-resolved on
an interval (``dns.py``). Each source hands the runtime an endpoint list, which it compiles
and swaps in exactly as a file reload does."""
