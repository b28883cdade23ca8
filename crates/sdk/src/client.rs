use crate::{Error, Result};
use hangar_engine::{Engine, EngineConfig};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// A connection to where sandboxes run. Today that is the embedded engine on this machine; a remote server
/// (`HANGAR_URL`) comes with the server. Cheap to clone; share one per process.
///
/// ```no_run
/// # fn demo() -> hangar::Result<()> {
/// // The default: $HANGAR_STATE_DIR or /var/lib/hangar.
/// let client = hangar::Client::from_env()?;
/// // Or a state directory of your own (tests do this).
/// let isolated = hangar::Client::embedded("/tmp/my-hangar")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) engine: Arc<Engine>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state_dir", &self.engine.config().state_dir)
            .finish()
    }
}

static DEFAULT: OnceLock<Client> = OnceLock::new();

impl Client {
    /// The process-wide default client, configured from the environment on first use.
    pub fn from_env() -> Result<Client> {
        if let Some(c) = DEFAULT.get() {
            return Ok(c.clone());
        }
        if let Some(url) = std::env::var_os("HANGAR_URL").filter(|u| !u.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "HANGAR_URL={}: remote servers are not supported by this version yet; unset it to use the embedded engine",
                url.to_string_lossy()
            )));
        }
        let client = Self::with_config(EngineConfig::from_env()?)?;
        Ok(DEFAULT.get_or_init(|| client).clone())
    }

    /// An embedded engine keeping its state in `state_dir`.
    pub fn embedded(state_dir: impl Into<PathBuf>) -> Result<Client> {
        let mut cfg = EngineConfig::from_env()?;
        cfg.state_dir = state_dir.into();
        Self::with_config(cfg)
    }

    /// An embedded engine with an explicit configuration.
    pub fn with_config(cfg: EngineConfig) -> Result<Client> {
        Ok(Client {
            engine: Engine::open(cfg)?,
        })
    }

    /// All sandboxes known to this client, oldest first, including ended ones.
    pub async fn list(&self) -> Result<Vec<crate::SandboxInfo>> {
        Ok(self.engine.list().await?)
    }
}
