//! TODO(attribution)
