//! Plugins: the shared view of one plugin ([`PluginEntry`]), its actor, its instances.
//!
//! - [`context`]: what the plugin room needs from the daemon, as two traits ([`context::ActorHost`],
//!   [`context::InstanceHost`]); the room never names the daemon itself.
//! - [`entry`]: what everybody may read about a plugin (status, routes, counters) and the
//!   systemctl-like handle to command it.
//! - [`actor`]: the one task per plugin that changes its state: a thin async shell that feeds
//!   commands, instance events and timers to its [`machine`] and carries out the actions.
//! - [`instance`]: one process and its task.
//! - [`spawn`]: argv, environment and limits of a process.
//! - [`spawner`]: the long-lived threads that fork plugins, off the tokio workers.
//! - [`machine`]: the lifecycle as one pure state machine (events in, actions out) the actor drives.
//! - [`state`]: the lifecycle states and the restart policy, without I/O.
//!
//! Architecture invariant: a plugin's state changes only inside its actor task; everybody else
//! reads snapshots or sends commands.

pub mod actor;
pub mod context;
pub mod entry;
pub mod instance;
pub mod machine;
pub mod spawn;
pub mod spawner;
pub mod state;

pub use entry::PluginEntry;
