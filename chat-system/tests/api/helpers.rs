//! The chat-system under test is testkit's [`TestChatSystem`]: it starts
//! the real service on port 0 with a database of its own, and makes the
//! requests every suite needs.

use testkit::TestChatSystem;

pub(crate) async fn spawn_app() -> TestChatSystem {
    TestChatSystem::start().await
}
