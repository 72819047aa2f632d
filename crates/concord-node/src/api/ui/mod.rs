//! `GET /ui`: the dashboard (DESIGN.md, "Interfaces"), served by every node. Plain
//! HTML, CSS and JavaScript modules embedded in the binary with `include_str!`: no build
//! step, no framework, nothing fetched from anywhere but the node that served the page.
//!
//! What it shows, and where from (the browser talks only to this node; the
//! `Content-Security-Policy` every asset carries forbids any other origin):
//! - the regions, each with its leader and followers, epochs, lag per origin region and
//!   whether each mirror hears its upstream: `GET /v1/deployment`, polled every 2 s
//!   (a region that did not answer shows as unreachable, not as empty);
//! - lag over time: the last 10 minutes of those polls, kept in the page, drawn as SVG;
//! - the open conflicts, the competing versions side by side (value as the API renders
//!   it, origin, HLC time, the winner), with buttons that resolve one by picking a
//!   version or by a typed value (`POST /v1/conflicts/{id}/resolve`): listed from
//!   `GET /v1/conflicts`, kept live by `GET /v1/conflicts/events`.
//!
//! Every value shown comes from the API's JSON and is put in the page as text, never as
//! markup.
//!
//! `dashboard.png` (next to the assets) is the README's screenshot, taken by
//! `tests/dashboard.rs`; it is not served.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// What the assets may load and talk to: this origin only, no inline script or style.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The asset at `path` (`/ui` and `/ui/` are the page), if there is one.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/ui" | "/ui/" | "/ui/index.html" => (HTML, include_str!("index.html")),
        "/ui/style.css" => (CSS, include_str!("style.css")),
        "/ui/app.js" => (JS, include_str!("app.js")),
        "/ui/regions.js" => (JS, include_str!("regions.js")),
        "/ui/chart.js" => (JS, include_str!("chart.js")),
        "/ui/conflicts.js" => (JS, include_str!("conflicts.js")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_every_module_it_loads_are_embedded() {
        let page = asset("/ui").expect("the page");
        assert!(page.content_type.starts_with("text/html"));
        let mut sources: Vec<String> = Vec::new();
        for text in ["/ui", "/ui/app.js", "/ui/regions.js", "/ui/chart.js", "/ui/conflicts.js"]
            .into_iter()
            .map(|p| asset(p).unwrap_or_else(|| panic!("{p} is embedded")).body)
        {
            for quote in ['"', '\''] {
                let mut rest = text;
                while let Some(at) = rest.find(&format!("{quote}/ui/")) {
                    let tail = &rest[at + 1..];
                    let end = tail.find(quote).expect("a closed quote");
                    sources.push(tail[..end].to_string());
                    rest = &tail[end..];
                }
            }
        }
        assert!(sources.len() >= 5, "{sources:?}");
        for s in &sources {
            assert!(asset(s).is_some(), "{s} is referenced but not embedded");
        }
        assert!(asset("/ui/missing.js").is_none() && asset("/uix").is_none());
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        for p in ["/ui", "/ui/style.css", "/ui/app.js", "/ui/regions.js", "/ui/chart.js", "/ui/conflicts.js"] {
            let body = asset(p).unwrap().body.replace("\"http://www.w3.org/2000/svg\"", "SVG");
            assert!(!body.contains("http://") && !body.contains("https://"), "{p} names another origin");
        }
    }
}
