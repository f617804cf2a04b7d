//! TODO(capture)
