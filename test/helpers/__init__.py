"""Shared test helpers: the DDS rig, the small eval data set, and the factories several test files share."""
