//! TODO(classify)
