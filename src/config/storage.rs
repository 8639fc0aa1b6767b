//! The storage sections: `[nbd]`, `[images.*]`, `[clients.*]`,
//! `[unknown_clients]`, `default_export`. Each validated on its own; those
//! that name an image check it against `[images]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{wire, ConfigError, Cx, DEFAULT_NBD_LISTEN};
use crate::mac::Mac;
use crate::storage::registry::{ClientRule, ImageSpec, OverlayPolicy};

/// The configured images, by name, for the sections that name one.
pub(super) struct ImageNames<'a>(pub(super) &'a BTreeMap<String, wire::Image>);

impl ImageNames<'_> {
    /// `Ok` when `image` is configured, else the error at `key` listing them.
    fn check(&self, cx: &Cx, key: &str, image: &str) -> Result<(), ConfigError> {
        match self.0.contains_key(image) {
            true => Ok(()),
            false => Err(cx.err(key, format!("image {image:?} is not configured"), &format!("use one of: {}", self.list()))),
        }
    }

    fn list(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// `[nbd]`: where NBD listens (`None`: disabled), and whether overlays open
/// only from their client's boot address.
pub(super) fn nbd(cx: &Cx, n: Option<wire::Nbd>) -> Result<(Option<Vec<SocketAddr>>, bool), ConfigError> {
    let require_boot_address = n.as_ref().and_then(|n| n.require_boot_address).unwrap_or(true);
    let listen = match n {
        Some(wire::Nbd { enabled: false, .. }) => return Ok((None, require_boot_address)),
        n => n.and_then(|n| n.listen).unwrap_or_else(|| vec![DEFAULT_NBD_LISTEN.to_string()]),
    };
    if listen.is_empty() {
        return Err(cx.err(
            "nbd.listen",
            "is empty".into(),
            "give at least one address such as \"0.0.0.0:10809\", or set nbd.enabled = false",
        ));
    }
    let mut addrs = Vec::new();
    for (i, a) in listen.iter().enumerate() {
        addrs.push(a.parse::<SocketAddr>().map_err(|_| {
            cx.err(&format!("nbd.listen[{i}]"), format!("{a:?} is not an address:port"), "write it as \"0.0.0.0:10809\" or \"[::]:10809\"")
        })?);
    }
    Ok((Some(addrs), require_boot_address))
}

/// `[images.*]`: at least one, each a file, its partition in range.
pub(super) fn images(cx: &Cx, images: &BTreeMap<String, wire::Image>) -> Result<Vec<ImageSpec>, ConfigError> {
    if images.is_empty() {
        return Err(cx.err("images", "no image is configured".into(), "add an [images.NAME] table with path = \"/path/to/base.img\""));
    }
    let mut out = Vec::new();
    for (name, image) in images {
        let key = format!("images.{name}");
        if name.is_empty() || name.parse::<Mac>().is_ok() {
            return Err(cx.err(
                &key,
                "an image name must not be empty or look like a MAC address".into(),
                "rename the image (export names that look like MACs are client overlays)",
            ));
        }
        let path = cx.resolve(&image.path);
        if !path.is_file() {
            return Err(cx.err(
                &format!("{key}.path"),
                format!("{} is not a readable file", path.display()),
                "point it at a raw or qcow2 base image",
            ));
        }
        if let Some(n) = image.partition {
            if !(1..=boot_limits::MAX_PARTITION).contains(&n) {
                return Err(cx.err(
                    &format!("{key}.partition"),
                    format!("{n} is not a partition number"),
                    &format!(
                        "give the root filesystem's partition, 1 to {} (`fdisk -l` on the image lists them), \
                         or leave it out for an image that is one filesystem",
                        boot_limits::MAX_PARTITION
                    ),
                ));
            }
        }
        out.push(ImageSpec { name: name.clone(), path, description: image.description.clone().unwrap_or_default() });
    }
    Ok(out)
}

/// `[clients.*]`: each table named by a MAC (once, in any spelling), on a
/// configured image.
pub(super) fn clients(
    cx: &Cx,
    clients: &BTreeMap<String, wire::Client>,
    images: &ImageNames,
) -> Result<BTreeMap<Mac, ClientRule>, ConfigError> {
    let mut out = BTreeMap::new();
    for (mac_text, client) in clients {
        let key = format!("clients.\"{mac_text}\"");
        let mac: Mac = mac_text
            .parse()
            .map_err(|e: crate::mac::MacParseError| cx.err(&key, e.to_string(), "use the client's MAC address as the table name"))?;
        images.check(cx, &format!("{key}.image"), &client.image)?;
        let rule = ClientRule { image: client.image.clone(), policy: client.policy.unwrap_or(OverlayPolicy::Persistent) };
        if out.insert(mac, rule).is_some() {
            return Err(cx.err(&key, format!("client {mac} is configured twice (in another spelling)"), "keep one entry per MAC"));
        }
    }
    Ok(out)
}

/// `[unknown_clients]`: refused (the default), or booted from an image.
pub(super) fn unknown_clients(cx: &Cx, u: Option<wire::Unknown>, images: &ImageNames) -> Result<Option<ClientRule>, ConfigError> {
    let Some(u) = u else { return Ok(None) };
    match u.action {
        wire::UnknownAction::Refuse if u.image.is_some() => {
            Err(cx.err("unknown_clients.image", "is set but action is \"refuse\"".into(), "remove it, or set action = \"boot\""))
        }
        wire::UnknownAction::Refuse => Ok(None),
        wire::UnknownAction::Boot => {
            let image = u.image.ok_or_else(|| {
                cx.err(
                    "unknown_clients.image",
                    "is missing".into(),
                    &format!("action = \"boot\" needs the image to boot: one of {}", images.list()),
                )
            })?;
            images.check(cx, "unknown_clients.image", &image)?;
            Ok(Some(ClientRule { image, policy: u.policy.unwrap_or(OverlayPolicy::Ephemeral) }))
        }
    }
}

/// `default_export`: the image the empty export name serves (the only
/// image, when there is one and nothing is said).
pub(super) fn default_export(cx: &Cx, name: Option<String>, images: &ImageNames) -> Result<Option<String>, ConfigError> {
    match name {
        Some(name) => images.check(cx, "default_export", &name).map(|()| Some(name)),
        None if images.0.len() == 1 => Ok(images.0.keys().next().cloned()),
        None => Ok(None),
    }
}
