"""Transports: they only move frames between the network and the codec."""
