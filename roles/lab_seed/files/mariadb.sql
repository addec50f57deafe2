-- Sample data of the lab's MariaDB (roles/lab_seed). Deterministic: the same rows every time.
-- Unicode and binary values, a foreign key, a view, a trigger, a function and a procedure.
CREATE DATABASE IF NOT EXISTS llmops_app CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE llmops_app;

CREATE TABLE users (
  id INT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(200) NOT NULL UNIQUE,
  created_at DATETIME(6) NOT NULL
) ENGINE=InnoDB;

CREATE TABLE documents (
  id INT PRIMARY KEY,
  user_id INT NOT NULL,
  title VARCHAR(255) NOT NULL,
  body MEDIUMTEXT NOT NULL,
  digest BINARY(32) NOT NULL,
  raw_bytes BLOB NOT NULL,
  created_at DATETIME(6) NOT NULL,
  CONSTRAINT fk_documents_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB;

CREATE TABLE chat_messages (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  session_id CHAR(36) NOT NULL,
  role ENUM('user', 'assistant', 'system') NOT NULL,
  content TEXT NOT NULL,
  tokens INT NOT NULL,
  KEY idx_session (session_id)
) ENGINE=InnoDB;

CREATE TABLE document_audit (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  document_id INT NOT NULL,
  action VARCHAR(16) NOT NULL
) ENGINE=InnoDB;

DELIMITER //
CREATE TRIGGER trg_documents_audit AFTER INSERT ON documents FOR EACH ROW
BEGIN
  INSERT INTO document_audit (document_id, action) VALUES (NEW.id, 'insert');
END//
CREATE FUNCTION doc_words(t MEDIUMTEXT) RETURNS INT DETERMINISTIC
  RETURN LENGTH(t) - LENGTH(REPLACE(t, ' ', '')) + 1//
CREATE PROCEDURE user_summary(IN uid INT)
BEGIN
  SELECT u.name, COUNT(d.id) AS documents FROM users u LEFT JOIN documents d ON d.user_id = u.id
  WHERE u.id = uid GROUP BY u.name;
END//
DELIMITER ;

CREATE VIEW user_document_counts AS
  SELECT u.id AS user_id, u.name, COUNT(d.id) AS documents
  FROM users u LEFT JOIN documents d ON d.user_id = u.id GROUP BY u.id, u.name;

INSERT INTO users (id, name, email, created_at)
  SELECT seq, CONCAT('사용자 ', seq, ' — Ünïcödé ✓'), CONCAT('user', seq, '@example.org'),
         TIMESTAMP('2026-01-01 00:00:00') + INTERVAL seq MINUTE
  FROM seq_1_to_500;

INSERT INTO documents (id, user_id, title, body, digest, raw_bytes, created_at)
  SELECT seq, 1 + seq MOD 500, CONCAT('문서 #', seq, ' « RAG »'),
         REPEAT(CONCAT('본문 text ', seq, ' '), 40),
         UNHEX(SHA2(CONCAT('d', seq), 256)),
         UNHEX(CONCAT(SHA2(CONCAT('b', seq), 512), '00FF00FF', SHA2(seq, 512))),
         TIMESTAMP('2026-02-01 00:00:00') + INTERVAL seq SECOND
  FROM seq_1_to_2000;

INSERT INTO chat_messages (session_id, role, content, tokens)
  SELECT CONCAT('00000000-0000-4000-8000-', LPAD(seq MOD 50, 12, '0')),
         ELT(1 + seq MOD 3, 'user', 'assistant', 'system'),
         CONCAT('message ', seq, ' 🤖 응답'), seq MOD 700
  FROM seq_1_to_3000;

-- Names are data: a schema, a table and columns whose names break naive scripts (MariaDB names allow
-- any BMP character but NUL; no emoji). Every backup, restore and drill of the lab carries them.
CREATE DATABASE `이름 "q" 'q' $(touch pwned) ;` CHARACTER SET utf8mb4;
CREATE TABLE `이름 "q" 'q' $(touch pwned) ;`.`tab\there ``b`` \\ a.b
nl` (`열 "값"` INT PRIMARY KEY, `$(id); --` TEXT) ENGINE=InnoDB;
INSERT INTO `이름 "q" 'q' $(touch pwned) ;`.`tab\there ``b`` \\ a.b
nl` VALUES (1, '값 😀 \'q\' "q" `b` \\ $(touch pwned)\t\n'), (2, NULL);

CREATE TABLE seed_info (version INT PRIMARY KEY, seeded_at DATETIME NOT NULL) ENGINE=InnoDB;
INSERT INTO seed_info VALUES (1, NOW());
