//! TODO(aggregate)
