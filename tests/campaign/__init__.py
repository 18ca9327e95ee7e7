"""A randomized fault campaign: writers, an admin and a nemesis, checked against history."""
