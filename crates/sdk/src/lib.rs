//! Hangar: isolated, disposable Linux sandboxes made from images, with live output streaming.
//!
//! Create a [`Sandbox`], run commands in it with [`Sandbox::exec`] and watch their output as it is
//! written (printed through, or handed to your callbacks as raw byte chunks or whole lines), get the
//! complete [`ExecResult`], move files in and out, and stop it.
//!
//! ```no_run
//! use hangar::Sandbox;
//!
//! # async fn demo() -> hangar::Result<()> {
//! let result = Sandbox::builder()
//!     .command("sleep")
//!     .args(["infinity"])
//!     .run(async |sb| {
//!         sb.write_file("train.py", "print('epoch 1')\n").await?;
//!         sb.exec(["python3", "train.py"]).stream_output(true).check(true).await
//!     })
//!     .await?;
//! assert_eq!(result.stdout_text(), "epoch 1\n");
//! # Ok(()) }
//! ```
//!
//! Without `HANGAR_URL` the SDK runs sandboxes through an embedded engine on this machine (as root), keeping
//! its state in `$HANGAR_STATE_DIR` (default `/var/lib/hangar`); see [`Client`]. A [`blocking`] facade
//! offers the same API without async.

pub mod blocking;
mod client;
mod error;
mod exec;
mod handle;
mod logs;
mod remote;
mod sandbox;

pub use client::Client;
pub use error::{Error, FileErrorKind, Result};
pub use exec::{Exec, ExecResult, ExecRun, LineBuffer};
pub use handle::{ExecHandle, ExecInput};
#[cfg(feature = "embedded")]
pub use hangar_engine::EngineConfig;
pub use hangar_types::quantity;
pub use hangar_types::{
    Ending, ExecEnd, ExecEvent, ExecInfo, NetTarget, NetworkMode, NetworkPolicy, OnDisconnect, Output, OutputStream,
    SandboxInfo, SandboxState, StartFailure, StartFailureKind, Usage,
};
pub use logs::{LogStream, Logs, SandboxLog};
pub use sandbox::{Sandbox, SandboxBuilder};
