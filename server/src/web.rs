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
