//! Contract snapshot tests (placeholder until the snapshot suite lands).
