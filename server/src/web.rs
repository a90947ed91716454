//! The web chat page at `/`: plain HTML, CSS and JavaScript with no build step and no CDN,
//! compiled into the binary (rust-embed reads them from `server/web/` in debug builds, so a
//! page edit shows on reload without rebuilding).

use poem::endpoint::{EmbeddedFileEndpoint, EmbeddedFilesEndpoint};
use poem::middleware::SetHeader;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct Assets;

/// Only our own files and our own API, and no framing: the page holds a token.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Serves the page at `/` in front of `routes`. A middleware rather than a route: poem's router
/// hands `/` to the OpenAPI service mounted at the root, however the two are registered.
pub async fn page_at_root<E: Endpoint>(routes: E, req: Request) -> poem::Result<Response> {
    if req.uri().path() == "/" {
        let page = EmbeddedFileEndpoint::<Assets>::new("index.html").with(headers());
        return page.call(req).await.map(IntoResponse::into_response);
    }
    routes.call(req).await.map(IntoResponse::into_response)
}

/// `GET /docs`: Swagger UI, as poem-openapi renders it (one page with its script inline), under
/// a policy as strict as the chat page's: the inline scripts run because their hashes are
/// listed, nothing else runs, it talks only to this server, and no other site may frame it (a
/// framed "Try it out" holding a pasted token is a clickjacking target).
pub fn docs(html: String) -> impl Endpoint {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        inline_script_hashes(&html)
    );
    // Built once; each answer shares the bytes (1.7 MB) instead of copying them.
    let html = bytes::Bytes::from(html);
    let page = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("text/html; charset=utf-8")
            .body(html.clone())
    });
    page.with(
        SetHeader::new()
            .overriding("Content-Security-Policy", policy)
            .overriding("X-Content-Type-Options", "nosniff")
            .overriding("Referrer-Policy", "no-referrer"),
    )
}

/// `'sha256-…'` for each inline `<script>` of `html` (what a browser hashes: the text between
/// the tags), space-separated; `'none'` when there is none.
fn inline_script_hashes(html: &str) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find("<script") {
        let after_tag = &rest[open..];
        let Some(tag_end) = after_tag.find('>') else {
            break;
        };
        let body = &after_tag[tag_end + 1..];
        let Some(close) = body.find("</script>") else {
            break;
        };
        let digest = Sha256::digest(&body.as_bytes()[..close]);
        hashes.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[close..];
    }
    if hashes.is_empty() {
        "'none'".to_owned()
    } else {
        hashes.join(" ")
    }
}

/// `GET /web/*`: the page's script and style sheet.
pub fn assets() -> impl Endpoint {
    EmbeddedFilesEndpoint::<Assets>::new().with(headers())
}

fn headers() -> SetHeader {
    SetHeader::new()
        .overriding("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .overriding("X-Content-Type-Options", "nosniff")
        .overriding("Referrer-Policy", "no-referrer")
        // Revalidated on every load (the ETag makes that cheap), so an upgrade shows at once.
        .overriding("Cache-Control", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_scripts_are_hashed_as_browsers_hash_them() {
        let html = "<p><script charset=\"UTF-8\">alert(1)</script><script>let a = '<b>';</script>";
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            inline_script_hashes(html),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=' \
             'sha256-EQy6lbKMEDS5RtWNeoIz/0Mj5/rDTMdpO0ABzyh6HlI='"
        );
        assert_eq!(inline_script_hashes("<p>no script</p>"), "'none'");
    }
}
