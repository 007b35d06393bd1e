"""One adapter per protocol over server/core: decode, call the data plane, encode, map errors to statuses."""
