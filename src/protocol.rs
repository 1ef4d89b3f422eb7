//! Events (engine → UI) placeholder
