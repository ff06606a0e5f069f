//! First start: an empty database gets a `default` organization, an owner and that
//! owner's API key, which is printed once and stored only as a digest.

use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::{PlainToken, TokenKind};
use crate::storage::{StorageError, Store};

/// What to tell the operator, once. `None` on every later start.
pub struct FirstRun {
    pub owner_email: String,
    pub api_key: PlainToken,
}

pub async fn ensure_initial_owner(
    store: &Store,
    config: &Config,
    clock: &dyn Clock,
) -> Result<Option<FirstRun>, StorageError> {
    let key = PlainToken::generate(TokenKind::ApiKey);
    let created = store
        .create_initial_owner(&config.bootstrap.owner_email, &key.hash(), clock.now())
        .await?;
    Ok(created.map(|c| FirstRun {
        owner_email: c.user.email,
        api_key: key,
    }))
}

impl FirstRun {
    /// The banner printed to the terminal (stdout), never to the log.
    pub fn banner(&self, public_url: &str) -> String {
        format!(
            "\n\
             ================================================================\n\
             Gatehouse first start: created organization `default` and its owner\n\
             \x20 owner:    {email}\n\
             \x20 API key:  {key}\n\
             \n\
             This key is shown only now and is stored only as a hash. Keep it\n\
             somewhere safe. Use it to sign in on the consent page at\n\
             \x20 {url}/authorize (when a client such as Claude connects), and to\n\
             create personal access tokens:\n\
             \x20 gatehouse pat create --org default --user {email} --name my-agent --scopes account:read\n\
             Lost it? `gatehouse key create --org default --user {email}` makes another.\n\
             ================================================================\n",
            email = self.owner_email,
            key = self.api_key.expose(),
            url = public_url,
        )
    }
}
