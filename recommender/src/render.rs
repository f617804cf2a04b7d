//! TODO(render)
