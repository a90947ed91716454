//! The smallest useful responder: it answers from its configuration and needs no network.
//!
//! Config keys: `message` (the reply; default below). `{email}` in it becomes the busy user's
//! email address.

wit_bindgen::generate!({ path: "../../wit", world: "responder" });


struct AwayMessage;

const DEFAULT_MESSAGE: &str = "I'm away right now and will get back to you soon.";

impl Guest for AwayMessage {
    fn respond(request: RespondRequest) -> Result<Option<String>, String> {
        let template = request
            .config
            .iter()
            .find(|(key, _)| key == "message")
            .map_or(DEFAULT_MESSAGE, |(_, value)| value.as_str());
        Ok(Some(template.replace("{email}", &request.recipient_email)))
    }
}

export!(AwayMessage);
