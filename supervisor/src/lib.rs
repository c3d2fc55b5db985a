//! plugind
