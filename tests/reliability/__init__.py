"""Reliability suite: crashes, cut connections, killed trainers, shutdowns and outages, bounded in time."""
