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
//! The assets are open to anyone (they hold no data); everything the page asks of the
//! API carries the deployment's token as `Authorization: Bearer` (`auth.js`). The page
//! takes it from the URL's fragment (`/ui#token=...`: a browser sends no fragment to a
//! server, so the token is in no request line or access log), keeps it in
//! `sessionStorage` (this tab only) and takes it off the address bar at once. The
//! browser's own history may still hold the address the page was opened with; where
//! that matters, type the token in the form instead. Without a token, or after a 401,
//! the page shows that form instead of the data and asks the node nothing; a 403 on a
//! resolve says the token may only read. The conflict feed is read with `fetch` and
//! parsed as server-sent events by `sse.js` (EventSource cannot send a header), with a
//! bound on what it buffers and EventSource's reconnects.
//!
//! `dashboard.png` (next to the assets) is the README's screenshot, taken by
//! `tests/dashboard.rs`; it is not served.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// What the assets may load and talk to: this origin only, no inline script or style
/// (the token form is handled by `app.js`, and submits nowhere).
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
        "/ui/auth.js" => (JS, include_str!("auth.js")),
        "/ui/sse.js" => (JS, include_str!("sse.js")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page and every script module.
    const MODULES: [&str; 7] =
        ["/ui", "/ui/app.js", "/ui/auth.js", "/ui/sse.js", "/ui/regions.js", "/ui/chart.js", "/ui/conflicts.js"];

    #[test]
    fn the_page_and_every_module_it_loads_are_embedded() {
        let page = asset("/ui").expect("the page");
        assert!(page.content_type.starts_with("text/html"));
        let mut sources: Vec<String> = Vec::new();
        for text in MODULES.into_iter().map(|p| asset(p).unwrap_or_else(|| panic!("{p} is embedded")).body) {
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
        assert!(sources.len() >= 10, "{sources:?}");
        for s in &sources {
            assert!(asset(s).is_some(), "{s} is referenced but not embedded");
        }
        assert!(asset("/ui/missing.js").is_none() && asset("/uix").is_none());
    }

    #[test]
    fn the_page_holds_no_inline_script_or_style() {
        // The policy would block them: the page would break in the browser, not here.
        let page = asset("/ui").unwrap().body.to_ascii_lowercase();
        let scripts: Vec<&str> = page.split("<script").skip(1).collect();
        assert!(!scripts.is_empty());
        for s in scripts {
            let tag = &s[..s.find('>').expect("a closed tag")];
            assert!(tag.contains(" src=\"/ui/"), "an inline script: <script{tag}>");
            assert!(s[tag.len() + 1..].trim_start().starts_with("</script>"), "a script with a body");
        }
        assert!(!page.contains("<style") && !page.contains(" style="), "inline style");
        assert!(!page.contains("\"javascript:"), "a javascript: URL");
        let handlers = page.split(|c: char| c.is_ascii_whitespace()).filter(|w| w.starts_with("on") && w.contains('='));
        assert_eq!(handlers.collect::<Vec<_>>(), Vec::<&str>::new(), "inline event handlers");
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        for p in MODULES.into_iter().chain(["/ui/style.css"]) {
            let body = asset(p).unwrap().body.replace("\"http://www.w3.org/2000/svg\"", "SVG");
            assert!(!body.contains("http://") && !body.contains("https://"), "{p} names another origin");
        }
    }
}
