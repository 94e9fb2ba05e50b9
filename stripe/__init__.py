"""stripe: a bonding VPN."""
