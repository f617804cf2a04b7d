//! TODO(cluster)
