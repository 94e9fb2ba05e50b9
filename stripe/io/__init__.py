"""The thin I/O shell around the sans-I/O core: TUN, UDP sockets, event loop."""
