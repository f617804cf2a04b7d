//! TODO(metrics)
