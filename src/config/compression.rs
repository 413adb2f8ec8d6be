//! `compression` (global defaults) and `routes[].compression` (false, true or a block that
//! overrides the defaults).

use crate::compress::{self, Algorithm};

use super::file::FileCompression;
use super::key::{is_token, Invalid, Key};
use super::units::parse_size;

/// Checks the global block on its own, so that its errors name its own path.
pub(super) fn check_global(global: &FileCompression) -> Result<(), Invalid> {
    settings(&Key::root("compression"), None, global).map(|_| ())
}

/// A route's compression at `key` (`routes[i].compression`) over the global block.
pub(super) fn for_route(
    key: &Key,
    own: Option<serde_yaml::Value>,
    global: Option<&FileCompression>,
) -> Result<Option<compress::Settings>, Invalid> {
    let global_key = Key::root("compression");
    match (own, global) {
        (None, None) | (Some(serde_yaml::Value::Bool(false)), _) => Ok(None),
        (None, Some(global)) => Ok(Some(settings(&global_key, None, global)?)),
        (Some(serde_yaml::Value::Bool(true)), global) => Ok(Some(settings(
            &global_key,
            None,
            &global.cloned().unwrap_or_default(),
        )?)),
        (Some(block @ serde_yaml::Value::Mapping(_)), global) => {
            let own: FileCompression = serde_path_to_error::deserialize(block)
                .map_err(|e| key.below(&e.path().to_string()).invalid(e.into_inner()))?;
            Ok(Some(settings(key, global, &own)?))
        }
        (Some(_), _) => Err(key.invalid("expected false, true or a compression block")),
    }
}

/// Compression settings: built-in defaults, then `base` (the global block), then `own` (at
/// `key`).
fn settings(
    key: &Key,
    base: Option<&FileCompression>,
    own: &FileCompression,
) -> Result<compress::Settings, Invalid> {
    let mut settings = compress::Settings::default();
    let global_key = Key::root("compression");
    for (layer, layer_key) in [(base, &global_key), (Some(own), key)] {
        let Some(layer) = layer else { continue };
        if let Some(names) = &layer.algorithms {
            let mut algorithms = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let alg = Algorithm::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
                    layer_key.field("algorithms").index(i).invalid(format!(
                        "unknown algorithm `{name}`; expected br, zstd or gzip"
                    ))
                })?;
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
            settings.algorithms = algorithms;
        }
        if let Some(min) = layer.min_size.as_deref() {
            settings.min_size =
                parse_size(min).map_err(|e| layer_key.field("min_size").invalid(e))?;
        }
        if let Some(level) = &layer.level {
            let check = |name: &str, value: Option<i64>, range: std::ops::RangeInclusive<i64>| {
                match value {
                    Some(v) if !range.contains(&v) => {
                        Err(layer_key.field("level").field(name).invalid(format!(
                            "{v} is out of range {}..={}",
                            range.start(),
                            range.end()
                        )))
                    }
                    other => Ok(other),
                }
            };
            if let Some(v) = check("gzip", level.gzip, 1..=9)? {
                settings.levels.gzip = v as u32;
            }
            if let Some(v) = check("br", level.br, 0..=11)? {
                settings.levels.br = v as u32;
            }
            if let Some(v) = check("zstd", level.zstd, 1..=22)? {
                settings.levels.zstd = v as i32;
            }
        }
        if let Some(types) = &layer.types {
            for (i, t) in types.iter().enumerate() {
                let valid = t
                    .split_once('/')
                    .is_some_and(|(a, b)| is_token(a) && (b == "*" || is_token(b)));
                if !valid {
                    return Err(layer_key.field("types").index(i).invalid(format!(
                        "`{t}` is not a media type like text/html or text/*"
                    )));
                }
            }
            settings.types = types.iter().map(|t| t.to_ascii_lowercase()).collect();
        }
    }
    Ok(settings)
}
