//! Keys named on the command line: by id (`key_…`) or as `PROJECT/NAME`, the
//! way people remember them. The API addresses keys by id only, so a name is
//! looked up in the project's key list first.

use super::api::{Api, Refused};
use anyhow::bail;
use keyward_api::keys::Key;
use keyward_api::List;
use keyward_core::KeyId;

/// Help text of every argument that names a key.
pub const HELP: &str = "Key: its id (key_…) or PROJECT/NAME (a project name in the default \
                        organization, or a project id)";

/// The id of the key `arg` names. A name must pick out one key (ephemeral
/// tokens, which carry their parent's name, are not counted); when several keys
/// share it, the error lists them so that one can be named by id.
pub fn resolve(api: &Api, arg: &str) -> anyhow::Result<String> {
    if KeyId::parse(arg).is_some() {
        return Ok(arg.to_owned());
    }
    let Some((project, name)) = arg.split_once('/') else {
        bail!("{arg:?} names no key: give a key id (key_…) or PROJECT/NAME");
    };
    if project.is_empty() || name.is_empty() {
        bail!("{arg:?} names no key: give a key id (key_…) or PROJECT/NAME");
    }
    let listed: List<Key> = match api.get_as("/api/v1/keys", &[("project", project.to_owned())]) {
        Ok(listed) => listed,
        Err(e) if Refused::is_not_found(&e, "project") => {
            bail!("no project named {project:?} (in {arg:?}): see `keyward projects list`")
        }
        Err(e) => return Err(e),
    };
    let named: Vec<&Key> = listed
        .data
        .iter()
        .filter(|k| !k.ephemeral && k.record.name == name)
        .collect();
    match named.as_slice() {
        [] => bail!("project {project:?} has no key named {name:?}: see `keyward keys list --project {project}`"),
        [one] => Ok(one.record.id.to_string()),
        several => {
            let ids: Vec<String> = several
                .iter()
                .map(|k| format!("{} ({})", k.record.id, k.record.status))
                .collect();
            bail!(
                "{} keys in project {project:?} are named {name:?}: {}; name one by its id",
                several.len(),
                ids.join(", ")
            )
        }
    }
}
