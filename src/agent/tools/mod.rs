//! nemo's built-in tools, one file each.
