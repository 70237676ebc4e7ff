"""The side-by-side benchmark: the tracker against the raw limits of the same machine, in the same run."""
