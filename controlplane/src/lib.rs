//! The control plane (API server, scheduler, controllers): not built yet, see issue 3.
