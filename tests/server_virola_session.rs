//! The Virola emulation of `uploadfs serve`, over raw HTTP: authentication (token, login
//! cookie, logout), the error and success envelopes, and the room's messages listed with
//! cursors, posted and deleted.

#[path = "server_common.rs"]
mod server_common;

use reqwest::Client;
use serde_json::json;
use server_common::common::{TestServer, TOKEN};
use server_common::virola_api::*;
use uploadfs::server::{VIROLA_MESSAGE_ID, VIROLA_ROOM_ID};

#[test]
fn auth_token_login_cookie_logout() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        // No credentials at all.
        let (st, v) = answer(c.get(api(&s, "/status")).send().await.unwrap()).await;
        assert_error(
            st,
            &v,
            401,
            Some("The Authorization HTTP-header or VirolaUserSessionId cookie expected"),
        );
        // A wrong bearer, on every kind of endpoint.
        for req in [
            c.get(api(&s, "/status")),
            c.get(api(&s, &format!("/rooms/{VIROLA_ROOM_ID}/messages"))),
            c.get(api(&s, "/attachments/1000")),
            c.delete(api(&s, "/attachments/1000")),
            c.post(api(
                &s,
                &format!("/messages/{VIROLA_MESSAGE_ID}/attachments"),
            ))
            .multipart(files_form(&[("a.txt", b"x")])),
        ] {
            let (st, v) = answer(req.bearer_auth("wrong").send().await.unwrap()).await;
            assert_error(
                st,
                &v,
                401,
                Some("Wrong Bearer, please renew Web API Access Token"),
            );
        }
        assert!(
            stored(&c, &s).await.is_empty(),
            "nothing stored without auth"
        );
        // The right bearer.
        let (st, v) = answer(
            c.get(api(&s, "/status"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(v["httpStatusCode"], 200);
        // Login: wrong password, then the right one.
        let (st, v) = answer(
            c.post(api(&s, "/login"))
                .json(&json!({"userName": "admin", "password": "nope"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 401, Some("The username or password is invalid."));
        let (st, v) = answer(
            c.post(api(&s, "/login"))
                .json(&json!({"user": "admin"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 400, None);
        let r = c
            .post(api(&s, "/login"))
            .json(&json!({"userName": "admin", "password": TOKEN}))
            .send()
            .await
            .unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .expect("session cookie")
            .to_str()
            .unwrap()
            .to_string();
        assert!(cookie.starts_with("VirolaUserSessionId="), "{cookie}");
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        let (st, v) = answer(r).await;
        assert_eq!(st, 200);
        assert_eq!(v["httpStatusCode"], 200);
        let sid = v["userSessionId"].as_str().unwrap().to_string();
        assert!(v["userId"].is_u64());
        let cookie_hdr = format!("VirolaUserSessionId={sid}");
        // The cookie authenticates uploads and reads.
        let (st, v) = answer(
            c.get(api(&s, "/status"))
                .header("cookie", &cookie_hdr)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(v["userSessionId"], sid.as_str());
        let (st, v) = answer(
            c.post(api(
                &s,
                &format!("/messages/{VIROLA_MESSAGE_ID}/attachments"),
            ))
            .header("cookie", &cookie_hdr)
            .multipart(files_form(&[("via-cookie.txt", b"hello")]))
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!((st.as_u16(), v), (200, json!({"httpStatusCode": 200})));
        // A bad cookie is refused.
        let (st, v) = answer(
            c.get(api(&s, "/status"))
                .header("cookie", "VirolaUserSessionId=forged")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 401, None);
        // Logout ends the session.
        let (st, v) = answer(
            c.post(api(&s, "/logout"))
                .header("cookie", &cookie_hdr)
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((st.as_u16(), v), (200, json!({"httpStatusCode": 200})));
        let (st, v) = answer(
            c.get(api(&s, "/status"))
                .header("cookie", &cookie_hdr)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 401, None);
    });
    assert_eq!(s.files("virola").len(), 1);
}

#[test]
fn room_messages_cursor_paging_and_delete() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        let room = api(&s, &format!("/rooms/{VIROLA_ROOM_ID}/messages"));
        for content in ["one", "two"] {
            let (st, v) = answer(
                c.post(&room)
                    .bearer_auth(TOKEN)
                    .json(&json!({"content": content}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!((st.as_u16(), v), (200, json!({"httpStatusCode": 200})));
        }
        let (st, v) = answer(
            c.post(&room)
                .bearer_auth(TOKEN)
                .json(&json!({"text": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 400, None);
        // Newest first.
        let (st, v) = answer(
            c.get(format!("{room}?direction=backward&limit=1"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(v["httpStatusCode"], 200);
        assert_eq!(v["roomId"], VIROLA_ROOM_ID);
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0]["content"], "two");
        let newest = msgs[0]["messageId"].as_u64().unwrap();
        assert!(msgs[0]["attachments"].as_array().unwrap().is_empty());
        // Paging backward from the newest: "one", then the seed message, then nothing.
        let page = |q: String| {
            let c = c.clone();
            let room = room.clone();
            async move {
                let (st, v) = answer(
                    c.get(format!("{room}?{q}"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(st, 200, "{v}");
                v["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["messageId"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            }
        };
        let p1 = page(format!("direction=backward&limit=1&cursor={newest}")).await;
        assert_eq!(p1.len(), 1);
        let p2 = page(format!("direction=backward&limit=5&cursor={}", p1[0])).await;
        assert_eq!(p2, vec![VIROLA_MESSAGE_ID]);
        assert!(
            page(format!("direction=backward&cursor={VIROLA_MESSAGE_ID}"))
                .await
                .is_empty()
        );
        // Forward is oldest first.
        let all = page("direction=forward&limit=10".into()).await;
        assert_eq!(all, vec![VIROLA_MESSAGE_ID, p1[0], newest]);
        assert_eq!(
            page(format!(
                "direction=forward&cursor={VIROLA_MESSAGE_ID}&limit=1"
            ))
            .await,
            vec![p1[0]]
        );
        // Bad parameters and unknown rooms.
        for q in ["direction=sideways", "limit=0", "limit=x", "cursor=abc"] {
            let (st, v) = answer(
                c.get(format!("{room}?{q}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_error(st, &v, 400, None);
        }
        let (st, v) = answer(
            c.get(api(&s, "/rooms/99/messages"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, None);
        // Attachments on a new message; deleting the message deletes them.
        let (st, _) = answer(
            c.post(api(&s, &format!("/messages/{newest}/attachments")))
                .bearer_auth(TOKEN)
                .multipart(files_form(&[("m.txt", b"on the new message")]))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(stored(&c, &s).await.len(), 1);
        let (st, v) = answer(
            c.delete(api(&s, &format!("/messages/{newest}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((st.as_u16(), v), (200, json!({"httpStatusCode": 200})));
        assert!(stored(&c, &s).await.is_empty());
        let (st, v) = answer(
            c.delete(api(&s, &format!("/messages/{newest}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, None);
        assert_eq!(
            page("direction=forward".into()).await,
            vec![VIROLA_MESSAGE_ID, p1[0]]
        );
    });
}
