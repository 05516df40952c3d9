"""Redis: connections (single, Sentinel, Cluster), the embedded server, command packing, and every
key and tunable.
"""
