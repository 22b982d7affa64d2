"""Proxying: connecting to a backend and relaying bytes to it."""
