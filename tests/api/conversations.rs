//! Groups, the conversation list and read marks over HTTP (issue 18's contract).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Answer, TestApp, TestUser};

async fn create(app: &TestApp, owner: &TestUser, title: &str, members: &[&TestUser]) -> Answer {
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    app.post(
        "/api/conversations",
        Some(&owner.token),
        json!({"title": title, "members": ids}),
    )
    .await
}

/// A group "Team" owned by `owner`; its id.
pub(crate) async fn group(app: &TestApp, owner: &TestUser, members: &[&TestUser]) -> String {
    let created = create(app, owner, "Team", members).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    created.body["id"].as_str().expect("id").to_owned()
}

fn roles(conversation: &Value) -> Vec<(String, String)> {
    conversation["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_owned(),
                m["role"].as_str().expect("role").to_owned(),
            )
        })
        .collect()
}

fn pair(user: &TestUser, role: &str) -> (String, String) {
    (user.id.clone(), role.to_owned())
}

async fn delete(app: &TestApp, caller: &TestUser, path: &str) -> Answer {
    app.request(Method::DELETE, path, Some(&caller.token), None)
        .await
}

async fn patch(app: &TestApp, caller: &TestUser, path: &str, body: Value) -> Answer {
    app.request(Method::PATCH, path, Some(&caller.token), Some(body))
        .await
}

#[tokio::test]
async fn a_group_is_created_with_its_owner_and_members() {
    let app = TestApp::spawn().await;
    let (ada, grace, linus) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("linus").await,
    );
    let created = create(&app, &ada, "  Lunch crew ", &[&grace, &linus, &grace]).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let body = &created.body;
    assert_eq!(body["kind"], "group");
    assert_eq!(body["title"], "Lunch crew");
    assert_eq!(
        roles(body),
        vec![
            pair(&ada, "owner"),
            pair(&grace, "member"),
            pair(&linus, "member")
        ]
    );
    assert_eq!(body["members"][1]["email"], grace.email.as_str());
    chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().expect("created_at"))
        .expect("RFC 3339");

    let id = body["id"].as_str().expect("id");
    for member in [&ada, &grace, &linus] {
        let seen = app
            .get(&format!("/api/conversations/{id}"), &member.token)
            .await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(&seen.body, body);
    }
}

#[tokio::test]
async fn bad_groups_are_refused_with_the_reason() {
    let app = TestApp::spawn().await;
    let (ada, grace) = (app.user("ada").await, app.user("grace").await);
    for (title, message) in [
        ("   ", "Title must not be empty"),
        (
            "ad\u{200B}min",
            "Title must not contain invisible or control characters",
        ),
        (&"x".repeat(101)[..], "Title must be at most 100 characters"),
    ] {
        let refused = create(&app, &ada, title, &[&grace]).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{title:?}");
        assert_eq!(refused.message(), message);
    }
    let stranger = app
        .post(
            "/api/conversations",
            Some(&ada.token),
            json!({"title": "t", "members": ["01a21ad6-1116-770e-912c-0b82997c7500"]}),
        )
        .await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    assert_eq!(stranger.message(), "User not found");
    let garbage = app
        .post(
            "/api/conversations",
            Some(&ada.token),
            json!({"title": "t", "members": ["not-an-id"]}),
        )
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert_eq!(garbage.message(), "Member must be a valid user id");
    // Nothing was created by any of them.
    let list = app.get("/api/conversations", &grace.token).await;
    assert_eq!(list.body, json!([]));
}

#[tokio::test]
async fn nobody_outside_a_conversation_learns_that_it_exists() {
    let app = TestApp::spawn().await;
    let (ada, grace, eve) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("eve").await,
    );
    let id = group(&app, &ada, &[&grace]).await;
    app.send_ok(&ada, &grace, "direct").await;
    let direct = app.messages(&ada, "").await.body[0]["conversation"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let missing = "01a21ad6-1116-770e-912c-0b82997c7500";
    for conversation in [id.as_str(), direct.as_str(), missing, "garbage"] {
        let answers = [
            app.get(&format!("/api/conversations/{conversation}"), &eve.token)
                .await,
            patch(
                &app,
                &eve,
                &format!("/api/conversations/{conversation}"),
                json!({"title": "mine"}),
            )
            .await,
            app.post(
                &format!("/api/conversations/{conversation}/members"),
                Some(&eve.token),
                json!({"user": eve.id}),
            )
            .await,
            delete(
                &app,
                &eve,
                &format!("/api/conversations/{conversation}/members/{}", eve.id),
            )
            .await,
            app.post(
                &format!("/api/conversations/{conversation}/read"),
                Some(&eve.token),
                json!({"upto": missing}),
            )
            .await,
        ];
        for answer in answers {
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{conversation}");
            assert_eq!(answer.message(), "Conversation not found");
        }
    }
    // The direct conversation is there for the two people in it.
    let seen = app
        .get(&format!("/api/conversations/{direct}"), &grace.token)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body["kind"], "direct");
    assert!(seen.body.get("title").is_none());
    assert_eq!(seen.body["members"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn only_the_owner_renames_and_changes_members() {
    let app = TestApp::spawn().await;
    let (ada, grace, linus) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("linus").await,
    );
    let id = group(&app, &ada, &[&grace]).await;
    let path = format!("/api/conversations/{id}");

    let refused = patch(&app, &grace, &path, json!({"title": "Grace's"})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.message(), "Only the group's owner can do this");
    let renamed = patch(&app, &ada, &path, json!({"title": " Dinner "})).await;
    assert_eq!(renamed.status, StatusCode::OK);
    assert_eq!(renamed.body["title"], "Dinner");

    let members = format!("{path}/members");
    let refused = app
        .post(&members, Some(&grace.token), json!({"user": linus.id}))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let added = app
        .post(&members, Some(&ada.token), json!({"user": linus.id}))
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    assert_eq!(
        roles(&added.body),
        vec![
            pair(&ada, "owner"),
            pair(&grace, "member"),
            pair(&linus, "member")
        ]
    );
    let again = app
        .post(&members, Some(&ada.token), json!({"user": linus.id}))
        .await;
    assert_eq!(roles(&again.body).len(), 3);
    let nobody = app
        .post(
            &members,
            Some(&ada.token),
            json!({"user": "01a21ad6-1116-770e-912c-0b82997c7500"}),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    assert_eq!(nobody.message(), "User not found");

    let refused = delete(&app, &grace, &format!("{members}/{}", linus.id)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let removed = delete(&app, &ada, &format!("{members}/{}", linus.id)).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let gone = app.get(&path, &linus.token).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.message(), "Conversation not found");

    // A direct conversation has no title or members to change.
    app.send_ok(&ada, &grace, "hi").await;
    let direct = app.messages(&ada, "").await.body[0]["conversation"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let refused = patch(
        &app,
        &ada,
        &format!("/api/conversations/{direct}"),
        json!({"title": "x"}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.message(),
        "A direct conversation has no title or members to change"
    );
}

#[tokio::test]
async fn an_owner_who_leaves_hands_over_and_the_last_one_out_deletes_the_group() {
    let app = TestApp::spawn().await;
    let (ada, grace, linus) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("linus").await,
    );
    let id = group(&app, &ada, &[&grace, &linus]).await;
    let path = format!("/api/conversations/{id}");
    let left = delete(&app, &ada, &format!("{path}/members/{}", ada.id)).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT);
    let now = app.get(&path, &grace.token).await;
    assert_eq!(
        roles(&now.body),
        vec![pair(&grace, "owner"), pair(&linus, "member")]
    );
    // Linus leaves on his own; Grace, the last, deletes it by leaving.
    for member in [&linus, &grace] {
        let left = delete(&app, member, &format!("{path}/members/{}", member.id)).await;
        assert_eq!(left.status, StatusCode::NO_CONTENT);
    }
    for member in [&ada, &grace, &linus] {
        assert_eq!(
            app.get(&path, &member.token).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn the_list_shows_recent_activity_first_with_unread_counts_and_read_marks() {
    let app = TestApp::spawn().await;
    let (ada, grace, linus) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("linus").await,
    );
    let first = app.send_ok(&grace, &ada, "one").await;
    let second = app.send_ok(&grace, &ada, "two").await;
    app.send_ok(&ada, &grace, "mine").await;
    let team = group(&app, &ada, &[&grace]).await;
    let from_linus = app.send_ok(&linus, &ada, "hello").await;

    let list = app.get("/api/conversations", &ada.token).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body.as_array().expect("array");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["kind"], "direct");
    assert_eq!(items[0]["peer"], linus.id.as_str());
    assert_eq!(items[0]["last_message"]["id"], from_linus.as_str());
    assert_eq!(items[0]["unread"], 1);
    assert_eq!(items[1]["id"], team.as_str());
    assert_eq!(items[1]["title"], "Team");
    assert!(items[1].get("peer").is_none());
    assert!(items[1].get("last_message").is_none());
    assert_eq!(items[2]["peer"], grace.id.as_str());
    assert_eq!(items[2]["last_message"]["content"], "mine");
    assert_eq!(items[2]["unread"], 2, "Ada's own message is not unread");
    assert!(items[2].get("read_upto").is_none());

    let with_grace = items[2]["id"].as_str().expect("id").to_owned();
    let read = format!("/api/conversations/{with_grace}/read");
    let marked = app
        .post(&read, Some(&ada.token), json!({"upto": first}))
        .await;
    assert_eq!(marked.status, StatusCode::OK);
    assert_eq!(
        marked.body,
        json!({"conversation": with_grace, "user": ada.id, "upto": first})
    );
    let marked = app
        .post(&read, Some(&ada.token), json!({"upto": second}))
        .await;
    assert_eq!(marked.body["upto"], second.as_str());
    // Never back.
    let marked = app
        .post(&read, Some(&ada.token), json!({"upto": first}))
        .await;
    assert_eq!(marked.body["upto"], second.as_str());
    // A message of another conversation is not a mark here.
    let elsewhere = app
        .post(&read, Some(&ada.token), json!({"upto": from_linus}))
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(elsewhere.message(), "Message not found");

    // The second page starts after the first page's last cursor.
    let page = app.get("/api/conversations?limit=2", &ada.token).await;
    let page = page.body.as_array().expect("array").clone();
    assert_eq!(page.len(), 2);
    let cursor = page[1]["cursor"].as_str().expect("cursor");
    let rest = app
        .get(
            &format!("/api/conversations?limit=2&before={cursor}"),
            &ada.token,
        )
        .await;
    let rest = rest.body.as_array().expect("array").clone();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["id"], with_grace.as_str());
    assert_eq!(
        (rest[0]["unread"].clone(), rest[0]["read_upto"].clone()),
        (json!(0), json!(second))
    );

    // Grace's side has its own counts.
    let hers = app.get("/api/conversations", &grace.token).await;
    let direct = hers
        .body
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["id"] == with_grace.as_str())
        .expect("listed")
        .clone();
    assert_eq!(direct["unread"], 1);
    let bad = app.get("/api/conversations?limit=0", &ada.token).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_conversation_pages_its_own_messages_for_its_members_only() {
    let app = TestApp::spawn().await;
    let (ada, grace, eve) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("eve").await,
    );
    let ids = [
        app.send_ok(&ada, &grace, "one").await,
        app.send_ok(&grace, &ada, "two").await,
        app.send_ok(&ada, &grace, "three").await,
    ];
    app.send_ok(&ada, &eve, "elsewhere").await;
    let conversation = app
        .messages(&ada, &format!("?with={}", grace.id))
        .await
        .body[0]["conversation"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let path = format!("/api/conversations/{conversation}/messages");
    let listed = |answer: Answer| -> Vec<String> {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer
            .body
            .as_array()
            .expect("array")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(listed(app.get(&path, &grace.token).await), ids);
    assert_eq!(
        listed(app.get(&format!("{path}?limit=2"), &ada.token).await),
        ids[1..]
    );
    assert_eq!(
        listed(
            app.get(&format!("{path}?after={}&limit=1", ids[0]), &ada.token)
                .await
        ),
        ids[1..2]
    );
    assert_eq!(
        listed(
            app.get(&format!("{path}?before={}", ids[2]), &ada.token)
                .await
        ),
        ids[..2]
    );
    let outsider = app.get(&path, &eve.token).await;
    assert_eq!(outsider.status, StatusCode::NOT_FOUND);
    assert_eq!(outsider.message(), "Conversation not found");
    let bad = app.get(&format!("{path}?limit=0"), &ada.token).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.message(), "Limit must be between 1 and 200");
}

#[tokio::test]
async fn groups_have_a_member_cap_and_a_creation_rate() {
    let app = TestApp::spawn_configured(|config| {
        config.limits.max_group_members = 3;
        config.limits.groups_created = Some(palaver::config::Rate::new(
            2,
            std::time::Duration::from_secs(3600),
        ));
    })
    .await;
    let people = [
        app.user("a").await,
        app.user("b").await,
        app.user("c").await,
        app.user("d").await,
    ];
    let too_many = create(
        &app,
        &people[0],
        "Big",
        &[&people[1], &people[2], &people[3]],
    )
    .await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_many.message(), "A group holds at most 3 members");
    let id = group(&app, &people[0], &[&people[1], &people[2]]).await;
    let full = app
        .post(
            &format!("/api/conversations/{id}/members"),
            Some(&people[0].token),
            json!({"user": people[3].id}),
        )
        .await;
    assert_eq!(full.status, StatusCode::BAD_REQUEST);
    assert_eq!(full.message(), "A group holds at most 3 members");

    group(&app, &people[0], &[&people[1]]).await;
    let response = app
        .client
        .post(app.url("/api/conversations"))
        .bearer_auth(&people[0].token)
        .json(&json!({"title": "third", "members": []}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=1800).contains(&wait), "{wait}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["message"],
        format!("You are creating groups too fast; try again in {wait} s")
    );
}
