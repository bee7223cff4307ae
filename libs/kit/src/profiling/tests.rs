use axum::body::Body;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::*;

async fn call(method: &str, path: &str) -> (u16, Vec<u8>) {
    let response = router::<()>()
        .oneshot(
            http::Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[test]
fn bad_queries_are_explained() {
    let check = |seconds, frequency, format: Option<&str>| {
        ProfileQuery {
            seconds,
            frequency,
            format: format.map(str::to_owned),
        }
        .check()
    };
    assert_eq!(
        check(None, None, None).unwrap(),
        ProfileRequest {
            duration: Duration::from_secs(30),
            frequency: 99,
            format: Format::Pprof
        }
    );
    assert_eq!(
        check(Some(2), Some(500), Some("folded")).unwrap().format,
        Format::Folded
    );
    assert!(
        check(Some(0), None, None)
            .unwrap_err()
            .contains("seconds must be 1 to 300")
    );
    assert!(
        check(Some(301), None, None)
            .unwrap_err()
            .contains("not 301")
    );
    assert!(
        check(None, Some(0), None)
            .unwrap_err()
            .contains("frequency must be")
    );
    assert!(
        check(None, None, Some("svg"))
            .unwrap_err()
            .contains("pprof or folded")
    );
}

#[tokio::test]
async fn bad_requests_are_400_with_the_reason() {
    let (status, body) = call("GET", "/debug/pprof/profile?seconds=9999").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("seconds must be"));
    let (status, body) = call("GET", "/debug/pprof/profile?seconds=abc").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = call("GET", "/debug/pprof/profile?colour=red").await;
    assert_eq!(status, 400);
}

/// Keeps a core busy in a function the profile should name.
#[inline(never)]
fn spin_for_the_profile(until: std::time::Instant) -> u64 {
    let mut x = 1_u64;
    while std::time::Instant::now() < until {
        for i in 0..10_000_u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_names_the_busy_function_in_both_formats() {
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let busy = std::thread::spawn(move || spin_for_the_profile(until));

    let folded = tokio::spawn(call(
        "GET",
        "/debug/pprof/profile?seconds=1&format=folded&frequency=500",
    ));
    // The sampler is process-wide: a second profile meanwhile is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = call("GET", "/debug/pprof/profile?seconds=1").await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let (status, body) = folded.await.unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let samples: u64 = text
        .lines()
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert!(samples >= 50, "{samples} samples:\n{text}");
    assert!(text.contains("spin_for_the_profile"), "{text}");

    let (status, body) = call("GET", "/debug/pprof/profile?seconds=1&frequency=500").await;
    assert_eq!(status, 200);
    let profile = encode::tests_decode(&body);
    assert_eq!(profile.0.first().map(String::as_str), Some(""));
    assert!(profile.0.iter().any(|s| s.contains("spin_for_the_profile")));
    assert!(profile.1 >= 50, "{} samples", profile.1);
    busy.join().unwrap();
}

#[tokio::test]
async fn the_heap_report_has_figures_and_a_trim_answers() {
    let (status, body) = call("GET", "/debug/heap").await;
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        report["resident_bytes"].as_u64().unwrap() > 1_000_000,
        "{report}"
    );
    assert!(
        report["heap"]["in_use_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    let (status, body) = call("POST", "/debug/heap/trim").await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(answer["released"].is_boolean(), "{answer}");
    assert!(answer["after"]["heap"]["free_bytes"].is_u64(), "{answer}");
}
