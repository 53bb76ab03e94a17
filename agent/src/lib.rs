//! The node agent (kubelet and proxy): not built yet, see issue 4.
